"""The real-time API (``rekindle serve``): routes, the read layer, the response cache, session state, auth."""
