from wsipipe.cli import main

main()
