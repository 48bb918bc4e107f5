from xb.broker.cli import main

main()
