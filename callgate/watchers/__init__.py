"""Sources of truth (Kubernetes API, files). Only this package talks to the API server."""
