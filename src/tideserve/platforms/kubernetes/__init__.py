"""The Kubernetes platform: render a service as Kubernetes objects, apply them, read their state back."""
