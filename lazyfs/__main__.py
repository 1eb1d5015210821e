from lazyfs.cli.main import main

main()
