"""Scale-out: replica mode against a shared store (replica.py), the local cluster launcher (launcher.py,
`python -m ntm_serve.cluster up --replicas 3`) and the Envoy proxy configuration (envoy.py)."""
