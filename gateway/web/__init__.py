"""What the gateway's web pages share: templates (autoescaped), static files, the
security headers every page carries, and CSRF tokens. The authorization server's sign-in
page and the console both render here."""
