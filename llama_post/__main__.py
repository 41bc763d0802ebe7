from llama_post.cli import app

app()
