from xb.api.cli import main

main()
