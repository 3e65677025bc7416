"""Desktop side of deployment: push a verified model to Pis over SSH (mask-deploy). The installer is install.sh."""
