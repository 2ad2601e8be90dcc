"""The chaos suite behind ``scripts/chaos`` (docs/CHAOS.md).

``prompts`` writes the seed's prompt files, ``checks`` judges what a seed left behind (pure), ``procs`` starts,
kills and inspects child processes, ``local`` and ``cloud`` drive the two paths, ``cli`` is the command.
"""
