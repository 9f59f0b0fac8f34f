from dht.cli import main
import sys
sys.exit(main())
