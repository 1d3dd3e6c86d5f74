from diffrt.cli import main

raise SystemExit(main())
