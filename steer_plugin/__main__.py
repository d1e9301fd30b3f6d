from steer_plugin.cli import main

raise SystemExit(main())
