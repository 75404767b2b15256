"""The FastAPI gateway: preprocess, beam search over the model tier, render, answer REST calls."""
