from callgate.cli.main import main

main()
