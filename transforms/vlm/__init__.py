"""Vision-language model plumbing shared by the designer and the judge: an OpenAI-compatible chat endpoint
(client, key, limits, retries, scrubbing) and process-wide loading of a local transformers model."""
