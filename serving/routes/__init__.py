"""HTTP routers, one per concern, composed by :func:`serving.app.create_app`."""
