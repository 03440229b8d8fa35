"""The benchmark agent: runs on the GPU pod and imports only the base install and `protocol`.

The pod runs hostile containers, so nothing here holds a wallet key or an S3 or database
credential: the agent receives a job file, an HMAC key on stdin and presigned upload URLs.
"""
