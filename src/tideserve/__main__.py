from tideserve.cli.main import main

main()
