from xb.client.cli import main

main()
