"""Provider implementations of the llama-post APIs; `providers.registry` lists them all."""
