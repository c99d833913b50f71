from bindha_rwx.cli import main

raise SystemExit(main())
