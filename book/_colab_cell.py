# Colab: install the book's library (does nothing anywhere else).
import subprocess, sys
if "google.colab" in sys.modules:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "congealing[diffusion] @ git+https://github.com/congealing-book/congealing-step-by-step"])
