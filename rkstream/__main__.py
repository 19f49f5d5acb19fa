from rkstream.cli import main

raise SystemExit(main())
