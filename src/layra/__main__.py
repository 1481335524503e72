from layra.cli import main

raise SystemExit(main())
