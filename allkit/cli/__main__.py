from allkit.cli.main import main

raise SystemExit(main())
