"""Generated protobuf and purerpc code for nuraft_mesg's wire schema (``proto/``).

Do not edit: regenerate with ``python3 tools/dev.py proto``.
"""
