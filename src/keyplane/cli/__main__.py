from keyplane.cli import main

main()
