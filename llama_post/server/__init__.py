from llama_post.server.app import create_app, serve

__all__ = ["create_app", "serve"]
