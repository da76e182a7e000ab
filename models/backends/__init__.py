"""LLM backends behind `models.llm.LLMClient`: openai (HTTP), local (transformers), vllm (GPU)."""
