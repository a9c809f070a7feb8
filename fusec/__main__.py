from fusec.cli import main

main()
