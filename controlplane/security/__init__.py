"""Transport security: certificates (x509.py, pure), the files a process presents
(tls.py: credentials for channels and servers, reloaded when the files change) and who is
calling (identity.py: the one reading of a peer certificate)."""
