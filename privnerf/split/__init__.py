"""Split learning (SplitNeRF / S²NeRF): the server holds poses and the field's grids, the client its images,
the head and the loss. Roles are files: server.py, client.py, transport.py; protocol.py is what crosses."""
