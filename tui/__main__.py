from xb.tui.cli import main

main()
