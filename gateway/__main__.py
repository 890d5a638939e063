import sys

from gateway.daemon import main

sys.exit(main())
