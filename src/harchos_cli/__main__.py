from harchos_cli.cli.entry import main

main()
