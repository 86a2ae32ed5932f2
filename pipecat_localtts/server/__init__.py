"""``pipecat-localtts serve``: one engine shared by many bots over HTTP and WebSocket.

Needs the ``server`` extra (FastAPI, uvicorn, prometheus_client). See
:mod:`pipecat_localtts.server.app` for the routes and :mod:`pipecat_localtts.server.protocol`
for the WebSocket protocol.
"""
