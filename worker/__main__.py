from xb.worker.cli import main

main()
