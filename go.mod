module rainforest

go 1.26
