import sys

from proxy.daemon import main

sys.exit(main())
