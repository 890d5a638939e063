import sys

from servers.daemon import main

sys.exit(main())
