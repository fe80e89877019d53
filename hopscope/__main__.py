from hopscope.cli import main

raise SystemExit(main())
