from edgecrab.cli import main

raise SystemExit(main())
