from llama_post.apis.llm_engine.api import LLMEngine

__all__ = ["LLMEngine"]
