from cmc_cli.app import main

main()
