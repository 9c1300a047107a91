"""Web app (``slam3r app``) and viewers (``slam3r view``) for reconstructions.

Modules: ``cli`` (the app command), ``ui`` (the Gradio page), ``jobs`` (a reconstruction running behind the page),
``inputs`` (uploads -> frames), ``live`` (camera / stream / RabbitMQ sources), ``preview`` (incremental cloud),
``refilter`` (threshold / point count re-applied to saved predictions), ``view`` and ``splat`` (viewer, mp4 render).
"""
