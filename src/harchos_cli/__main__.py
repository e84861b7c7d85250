from harchos_cli.cli.app import main

main()
