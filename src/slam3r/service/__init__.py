"""Real-time reconstruction service over RabbitMQ: ``slam3r serve`` (worker) and ``slam3r publish`` (frame source).

Modules: ``config`` (settings), ``messages`` (the message contract), ``broker`` (the AMQP link thread), ``stream``
(per-stream state), ``worker`` (the service loop), ``mesher`` (background meshing process), ``cli`` / ``publish``
(the commands).
"""
