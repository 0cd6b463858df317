"""`cxr serve`: the model behind a JSON API and a web page, with dynamic batching."""
