"""memefly: photo in, meme out. Shared pieces of the model tier and the gateway."""
