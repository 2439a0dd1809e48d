import sys

from andes.cli import main

sys.exit(main())
