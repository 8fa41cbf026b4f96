"""What is fitted after training to judge a prediction: the temperature that calibrates the
probabilities and the out-of-distribution score with its threshold ("not one of my species")."""
